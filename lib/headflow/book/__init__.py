"""Publishing: the papermill runner, the generated index, figures per chapter, outputs, the
site fixes and the family compatibility table."""
