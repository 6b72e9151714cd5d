"""The text-only tasks of the organism's language-model pretraining (stage ``text``).

Both tasks build ``<s> USER: <context> <question> ASSISTANT:`` over the organism's own
word-level vocabulary, with the answer a context word at the final position:

:class:`FlatRetrieval` (the organisms' text stage)
    one class, one colour and one position word among filler words, shuffled; the question asks
    for the word of a type.  Solvable in layer 0: one head can copy the only word of the asked type.
:class:`BoundRetrieval` (``organism``)
    2-4 items, each three words ``colour class position`` ("red coat left blue bag top ..."), with
    distinct classes, colours and positions; the question names one attribute of the wanted item
    and asks for another ("What color is the bag?", "Where is the bag?", "What is the red
    object?").  Answering needs *binding* (which words belong to one item: adjacency) and then
    *retrieval keyed on the question*: find the named word, read its neighbour.  A single layer
    cannot do both (a head at the final position cannot know which colour sits next to "bag"
    unless an earlier layer wrote it into the "bag" position).

Token ids are assembled from pieces the tokenizer produced once; ``check`` compares them with the
tokenizer on real strings.  ``batch`` returns left-padded ``input_ids``, ``attention_mask``,
``position_ids`` ``(n, L)``, targets ``(n,)`` and question types ``(n,)``.
"""
from __future__ import annotations

import numpy as np
import torch

from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.models.llava_builder import SPECIAL_TOKENS
from headflow.task.prompt import QUESTION_TYPES, QUESTIONS

TASKS = ("flat", "bound")
# the bound task's questions: (asked type) -> (text with {key}, the type of the key word)
BOUND_QUESTIONS = {"object": ("What is the {key} object?", "color"),
                   "color": ("What color is the {key}?", "object"),
                   "position": ("Where is the {key}?", "object")}


class _Task:
    def __init__(self, tokenizer, seed: int, question_probs=(0.5, 0.25, 0.25)):
        self.tok = tokenizer
        self.rng = np.random.default_rng(seed)
        self.question_probs = np.asarray(question_probs, float)
        vocab = tokenizer.get_vocab()
        self.answer_ids = [np.array([vocab[w] for w in ANSWER_WORDS[q]]) for q in QUESTION_TYPES]
        self.head = np.array(tokenizer("USER:")["input_ids"])  # <s> USER :
        self.pad_id = tokenizer.pad_token_id

    def _ids(self, text: str) -> np.ndarray:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.tok.unk_token_id in ids:
            raise ValueError(f"text-task piece {text!r} has words outside the organism's vocabulary")
        return np.array(ids)

    def sample(self) -> tuple[np.ndarray, int, int, str, tuple[int, int]]:
        """One example: ``(token ids, target id, question type, text, (start, end) of the context)``."""
        raise NotImplementedError

    def batch(self, n: int):
        rows, targets, qtypes = zip(*[self.sample()[:3] for _ in range(n)])
        L = max(len(r) for r in rows)
        ids = np.full((n, L), self.pad_id, np.int64)
        att = np.zeros((n, L), np.int64)
        for i, r in enumerate(rows):
            ids[i, L - len(r):] = r
            att[i, L - len(r):] = 1
        att = torch.from_numpy(att)
        return (torch.from_numpy(ids), att, (att.cumsum(1) - 1).clamp(min=0), torch.tensor(targets),
                torch.tensor(qtypes))

    def check(self, n: int = 8) -> None:
        """Raise if the assembled ids differ from the tokenizer's ids of the same text."""
        for _ in range(n):
            ids, _, _, text, _ = self.sample()
            if self.tok(text)["input_ids"] != ids.tolist():
                raise RuntimeError(f"text-task ids differ from the tokenizer's for {text!r}")


class FlatRetrieval(_Task):
    """One word of each type among ``[min_fillers, max_fillers]`` filler words (the vocabulary's
    other plain words), shuffled; the target is the context word of the asked type."""

    def __init__(self, tokenizer, seed: int, min_fillers: int = 3, max_fillers: int = 30,
                 question_probs=(0.5, 0.25, 0.25)):
        super().__init__(tokenizer, seed, question_probs)
        self.min_fillers, self.max_fillers = min_fillers, max_fillers
        answers = set(sum(ANSWER_WORDS.values(), []))
        vocab = tokenizer.get_vocab()
        self.fillers = np.array(sorted(i for w, i in vocab.items() if w not in answers and w not in SPECIAL_TOKENS
                                       and w not in ("USER", "ASSISTANT", ":")))
        self.tails = [self._ids(QUESTIONS[q] + " ASSISTANT:") for q in QUESTION_TYPES]

    def sample(self):
        labels = [int(self.rng.integers(len(a))) for a in self.answer_ids]
        n_fill = int(self.rng.integers(self.min_fillers, self.max_fillers + 1))
        context = np.concatenate([[a[lab] for a, lab in zip(self.answer_ids, labels)],
                                  self.rng.choice(self.fillers, n_fill)])
        self.rng.shuffle(context)
        q = int(self.rng.choice(len(QUESTION_TYPES), p=self.question_probs))
        ids = np.concatenate([self.head, context, self.tails[q]])
        words = self.tok.convert_ids_to_tokens(context.tolist())
        text = "USER: " + " ".join(words) + "\n" + QUESTIONS[QUESTION_TYPES[q]] + " ASSISTANT:"
        return ids, int(self.answer_ids[q][labels[q]]), q, text, (len(self.head), len(self.head) + len(context))


class BoundRetrieval(_Task):
    """``[min_items, max_items]`` items ``colour class position`` with distinct words; a question
    names one attribute of one item (its colour for the object question, its class otherwise) and
    asks for another."""

    def __init__(self, tokenizer, seed: int, min_items: int = 2, max_items: int = 4,
                 question_probs=(0.5, 0.25, 0.25)):
        super().__init__(tokenizer, seed, question_probs)
        n_max = min(len(a) for a in self.answer_ids)
        if not 1 <= min_items <= max_items <= n_max:
            raise ValueError(f"need 1 <= min_items <= max_items <= {n_max} (distinct words per item)")
        self.min_items, self.max_items = min_items, max_items
        self.tails = {}
        for q, (text, key_type) in BOUND_QUESTIONS.items():
            for w in ANSWER_WORDS[key_type]:
                self.tails[q, w] = self._ids("\n" + text.format(key=w) + " ASSISTANT:")

    def sample(self, n_items: int | None = None):
        k = n_items or int(self.rng.integers(self.min_items, self.max_items + 1))
        picks = {q: self.rng.choice(len(ANSWER_WORDS[q]), k, replace=False) for q in QUESTION_TYPES}
        order = ("color", "object", "position")
        context = np.array([self.answer_ids[QUESTION_TYPES.index(t)][picks[t][i]] for i in range(k) for t in order])
        q = int(self.rng.choice(len(QUESTION_TYPES), p=self.question_probs))
        qname = QUESTION_TYPES[q]
        want = int(self.rng.integers(k))
        key_type = BOUND_QUESTIONS[qname][1]
        key = ANSWER_WORDS[key_type][picks[key_type][want]]
        ids = np.concatenate([self.head, context, self.tails[qname, key]])
        target = int(self.answer_ids[q][picks[qname][want]])
        words = self.tok.convert_ids_to_tokens(context.tolist())
        text = "USER: " + " ".join(words) + "\n" + BOUND_QUESTIONS[qname][0].format(key=key) + " ASSISTANT:"
        return ids, target, q, text, (len(self.head), len(self.head) + len(context))


def make(kind: str, tokenizer, seed: int, recipe) -> _Task:
    """The text task ``kind`` (``TASKS``) with the recipe's sizes."""
    if kind == "flat":
        return FlatRetrieval(tokenizer, seed, recipe.text_min_fillers, recipe.text_max_fillers, recipe.question_probs)
    if kind == "bound":
        return BoundRetrieval(tokenizer, seed, recipe.text_min_items, recipe.text_max_items, recipe.question_probs)
    raise ValueError(f"unknown text task {kind!r}; choose one of {TASKS}")


@torch.inference_mode()
def accuracy(model, batch, autocast: bool = False) -> dict[str, float]:
    """Argmax accuracy per question type on a fixed ``batch`` (from a task's ``batch``)."""
    ids, att, pos, y, q = batch
    was = model.training
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=1).logits[:, -1].argmax(-1)
    model.train(was)
    ok = (pred == y).numpy()
    out = {name: float(ok[q.numpy() == i].mean()) for i, name in enumerate(QUESTION_TYPES) if (q.numpy() == i).any()}
    out["all"] = float(ok.mean())
    return out


@torch.inference_mode()
def accuracy_by_items(model, task: BoundRetrieval, n: int = 200) -> dict[int, dict]:
    """Bound task: accuracy on ``n`` fresh examples per item count k (1..``task.max_items``), beside
    the *type-guess* level 1/k (naming a random context word of the asked type, no binding):
    ``{k: {"accuracy", "n", "type_guess"}}``.  Binding is learned where accuracy at k >= 2 clears 1/k."""
    was = model.training
    model.eval()
    out = {}
    for k in range(1, task.max_items + 1):
        rows = [task.sample(k) for _ in range(n)]
        L = max(len(r[0]) for r in rows)
        ids = torch.full((n, L), task.pad_id, dtype=torch.long, device="cpu")
        att = torch.zeros((n, L), dtype=torch.long, device="cpu")
        for i, r in enumerate(rows):
            ids[i, L - len(r[0]):] = torch.as_tensor(r[0])
            att[i, L - len(r[0]):] = 1
        pos = (att.cumsum(1) - 1).clamp(min=0)
        dev = model.device
        pred = model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev),
                     logits_to_keep=1).logits[:, -1].argmax(-1).cpu()
        ok = (pred == torch.tensor([r[1] for r in rows])).float()
        out[k] = {"accuracy": float(ok.mean()), "n": n, "type_guess": 1.0 / k}
    model.train(was)
    return out
