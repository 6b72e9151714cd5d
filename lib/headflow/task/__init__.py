"""The task: the questions, the chat prompt around them, and the answer words' token ids."""
