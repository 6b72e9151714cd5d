"""Which class did the model name?  The correctness judge, for any label set.

A model's answer is free text: "dog", "Dogs.", "A dog", "The main object is a dog", "It's a hot
dog", "\\nDog", "strawberries", "a couch" (for VOC's "sofa").  :class:`Judge` is built once per
label set and reads such an answer by stated rules:

1. **Normalise** (:func:`normalise`): the first non-empty line, lower case, curly quotes made
   straight, hyphens and white space made single spaces, outer punctuation removed; the first
   sentence only.
2. **Strip a frame** (:data:`FRAMES`): "the main object (in the image) is", "it's", "this is",
   "there is", "i see", "the answer is", "(it is) on/at/in/to the", and articles and counts
   ("a", "an", "the", "some", "two", "a pair of").
3. **Find the class**: at the start of what remains, the *longest* name of any class, where the
   names of a class are its label, the label's plural or singular (:func:`inflections`: a stated
   table of irregular forms, then English suffix rules, never a blind "+es"), its synonyms
   (:data:`SYNONYM_GROUPS`, which hold both ways) and theirs.  The name must end the phrase: the
   next word is absent or one of :data:`PHRASE_END` ("on", "in", "with", "is", "sitting", ...), so
   "ice cream" never names "ice", "catfish" never "cat" and "hot dog" never "dog".  Leading
   modifiers (:data:`MODIFIERS`: sizes, colours) are skipped while no name starts there: "a small
   dog" names dog, but with a colour label set "red" is itself a name.
4. **An answer cut off** by the decode budget (``ended=False``) loses its last word, which may be
   a fragment ("Pine" of "Pineapple"): the decode must be long enough to end the answer
   (:data:`SENTENCE_TOKENS` beyond the longest answer, in :func:`headflow.mechanism.evaluate.evaluate`).

A label set is refused (``ValueError``, naming the classes) where the judge could not tell two
classes apart: two labels with a common name after normalisation ("Apple"/"apple", "dog"/"dog."/
"dogs"), fewer than two classes, or an empty label.  A synonym that is a name of two classes of the
set belongs to neither (listed in the judge's ``dropped``); a synonym that is another class's label
belongs to that class only.
"""
from __future__ import annotations

import re
from typing import Sequence

# Names a model may use for a class, in groups that hold both ways (matched after normalisation).
# Only unambiguous names: "notebook" (a laptop or a paper notebook) and "monitor" (a TV or a
# computer screen) are left out.
#: Names of one class, each group holding both ways.
SYNONYM_GROUPS = (
    ("tv", "television", "tv monitor", "tvmonitor", "tv set"),
    ("couch", "sofa"),
    ("motorcycle", "motorbike"),
    ("airplane", "aeroplane", "plane", "jet", "airliner"),
    ("cell phone", "mobile phone", "cellphone", "smartphone", "phone"),
    ("dining table", "diningtable", "table"),
    ("potted plant", "pottedplant", "houseplant", "plant"),
    ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    ("sports ball", "ball"),
    ("bicycle", "bike"),
    ("donut", "doughnut"),
    ("t shirt", "tshirt", "tee", "tee shirt"),
    ("boot", "ankle boot"),
    ("bag", "handbag"),
    ("person", "human"),
    ("trouser", "pants"),
    ("sneaker", "trainer"),
)

# Plurals no suffix rule gives (singular -> plural); used both ways.
IRREGULAR = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "goose": "geese", "tooth": "teeth", "foot": "feet", "ox": "oxen", "knife": "knives", "leaf": "leaves",
    "wolf": "wolves", "shelf": "shelves", "loaf": "loaves", "half": "halves", "life": "lives",
    "wife": "wives", "calf": "calves", "scarf": "scarves", "thief": "thieves", "potato": "potatoes",
    "tomato": "tomatoes", "hero": "heroes", "mango": "mangoes", "cactus": "cacti", "bus": "buses",
    "glass": "glasses", "dress": "dresses",
}
# Words whose plural is the word itself (and plural-only nouns).
INVARIANT = {"sheep", "deer", "fish", "aircraft", "scissors", "trousers", "pants", "jeans", "shorts", "glasses",
             "series", "species", "skis"}

# Words that may follow a class name and end its phrase.
#: Words that may follow a class name and end its phrase.
PHRASE_END = frozenset("""on in at with near next beside behind under over above below by from to and or but that
which who is are was were sits sit sitting stands standing lies lying holding being of for as
here there while side corner edge part half""".split())
# Leading words skipped when no name starts at them (sizes, colours, counts, looks).
#: Leading words skipped while no class name starts at them.
MODIFIERS = frozenset("""small large big little huge tiny tall short long young old new single whole main
red green blue yellow white black purple pink orange brown grey gray dark light bright colorful colourful
one two three several many some few pair of cute wooden metal plastic""".split())
ARTICLES = ("a pair of", "a couple of", "a", "an", "the", "some", "two", "one")
#: Sentence frames stripped from the start of an answer (regular expressions, applied repeatedly).
FRAMES = tuple(re.compile(p) for p in (
    r"^(the )?(main |largest |biggest |central |primary )?(object|item|thing|subject|animal|answer|color|colour"
    r"|position|location)( of (the|this) (object|item))?( (in|of) (the|this) (image|picture|photo|scene))?"
    r"( (is|are|appears to be|seems to be))?( |$)",
    r"^(it|this|that|they)( is| are|'s|'re|s) ",
    r"^(there|here)( is| are|'s) ",
    r"^i (can )?see ",
    r"^(the )?(image|picture|photo|scene) (shows|contains|depicts|has) ",
    r"^(it is |it's )?(located |positioned |placed )?(on|at|in|to|towards) (the )?",
))
#: Decode budget beyond the longest answer (room for a sentence answer).
SENTENCE_TOKENS = 16  # decode budget beyond the longest answer's tokens (sentence answers)


def normalise(text: str) -> str:
    """An answer as the judge reads it (rule 1): first non-empty line, first sentence, lower case,
    straight quotes, hyphens and runs of white space as single spaces, outer punctuation removed."""
    lines = [ln for ln in str(text).replace("\r", "\n").split("\n") if ln.strip()]
    text = (lines[0] if lines else "").lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.split(r"(?<=[a-z0-9])[.!?;](\s|$)", text)[0]
    text = re.sub(r"[-_/]", " ", text)
    text = re.sub(r"[^\w' ]", " ", text)
    return re.sub(r"\s+", " ", text).strip(" '")


def _plural(word: str) -> str:
    if word in INVARIANT:
        return word
    if word in IRREGULAR:
        return IRREGULAR[word]
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


_SINGULAR = {v: k for k, v in IRREGULAR.items()}


def _singular(word: str) -> str:
    if word in INVARIANT and word not in ("skis",):
        return word
    if word in _SINGULAR:
        return _SINGULAR[word]
    if re.search(r"[^aeiou]ies$", word):
        return word[:-3] + "y"
    if re.search(r"(ss|x|z|ch|sh)es$", word):
        return word[:-2]
    if re.search(r"[^su]s$", word) and len(word) > 3:
        return word[:-1]
    return word


def inflections(name: str) -> tuple[str, ...]:
    """``name`` (normalised) with its last word in singular and plural form (rules in the module)."""
    words = name.split()
    if not words:
        return ()
    *head, last = words
    forms = dict.fromkeys([last, _plural(last), _singular(last), _plural(_singular(last))])
    return tuple(dict.fromkeys(" ".join([*head, f]) for f in forms))


class Judge:
    """The correctness judge of one label set (rules in the module docstring).

    ``words``: the class labels, in label order.  :meth:`classify` returns the index of the class an
    answer names (or None); :meth:`correct` whether that is the target."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(words) < 2:
            raise ValueError(f"a label set needs at least two classes to judge an answer, got {words!r}; "
                             "add the alternatives the model chooses among")
        labels = []
        for w in words:
            n = normalise(w) if isinstance(w, str) else ""
            if not n:
                raise ValueError(f"label {w!r} is empty after normalisation; give every class a name")
            labels.append(n)
        own: dict[str, int] = {}  # every inflected label form -> its class
        for i, n in enumerate(labels):
            for f in inflections(n) + (n.replace(" ", ""),) * (" " in n):
                if f in own and own[f] != i:
                    raise ValueError(f"labels {words[own[f]]!r} and {words[i]!r} share the name {f!r}: the judge "
                                     "cannot tell these classes apart; merge them or rename one")
                own[f] = i
        claims: dict[str, set[int]] = {}
        for i, n in enumerate(labels):
            for group in SYNONYM_GROUPS:
                if any(f in group for f in inflections(n)):
                    for syn in group:
                        for f in inflections(syn):
                            claims.setdefault(f, set()).add(i)
        self.dropped = sorted(f for f, c in claims.items() if len(c) > 1 and f not in own)
        names = {f: next(iter(c)) for f, c in claims.items() if len(c) == 1 and f not in own}
        names.update(own)
        self.words = words
        self.names = names  # name -> class index
        self._by_length = sorted(names, key=lambda f: -len(f.split()))

    def _name_at(self, words: list[str], i: int) -> tuple[int, int] | None:
        """(class, length) of the longest name starting at word ``i`` that ends its phrase."""
        for name in self._by_length:
            parts = name.split()
            k = len(parts)
            if words[i:i + k] == parts and (i + k == len(words) or words[i + k] in PHRASE_END):
                return self.names[name], k
        return None

    def phrase(self, text: str, ended: bool = True) -> str:
        """The normalised answer with its frame stripped (rules 1, 2, 4)."""
        text = normalise(text)
        if not ended:
            text = " ".join(text.split()[:-1])
        changed = True
        while changed and text:
            changed = False
            for frame in FRAMES:
                new = frame.sub("", text, count=1).strip()
                if new != text:
                    text, changed = new, True
            for art in ARTICLES:
                if text.startswith(art + " "):
                    text, changed = text[len(art) + 1:], True
        return text

    def classify(self, text: str, ended: bool = True) -> int | None:
        """The index of the class the answer names, or None (rule 3)."""
        words = self.phrase(text, ended).split()
        for i, w in enumerate(words):
            hit = self._name_at(words, i)
            if hit is not None:
                return hit[0]
            if w not in MODIFIERS:
                return None
        return None

    def correct(self, text: str, target: int, ended: bool = True) -> bool:
        """Whether the answer names class ``target``."""
        if not 0 <= int(target) < len(self.words):
            raise ValueError(f"target {target} is not a class index of this label set (0..{len(self.words) - 1})")
        return self.classify(text, ended) == int(target)
