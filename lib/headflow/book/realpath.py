"""The real path: what each paper-scale checkpoint's own tokenizer, template and processor do to the
study, resolved offline through its shadow (:mod:`headflow.models.shadow`), and which chapters ran
on that shadow as mechanics runs.

``book/results/realpath.json`` holds one record per checkpoint: ``model``, ``tokenizer`` (npm
package, file and sha256), ``template_sha256``, ``classes_scored`` (COCO's 80 classes, each with a
target), ``first_token_collisions_resolved`` (the groups of classes that share a first token, each
told apart by a teacher-forced decision token), ``role_tokens``, ``image_tokens`` (at the full
profile's 640x480) and ``mechanics_chapters_passed`` (read from the executed notebooks of a
``shadows`` run), with the library's hash; from the ``full`` profile's plan
(``book/results/plan_full.json``, :mod:`headflow.scale.plan`) each record adds the checkpoint's
``masks`` per image, the regression ``fit`` they give and its planned ``peak_memory_gib`` (bf16,
the largest of its chapters).
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from headflow.book import outputs
from headflow.images.coco import COCO_CLASSES
from headflow.mechanism import tokens
from headflow.models import loading, shadow, vocabularies
from headflow.task import answers
from headflow.task.prompt import build_prompt, question_text
from headflow.util.hashing import file_sha256, sha256
from headflow.util.paths import REPO_ROOT

IMAGE_SIZE = (640, 480)


def resolve(checkpoint: str) -> dict:
    """One checkpoint's record without the chapters: tokenizer, template, answers, token groups."""
    e = shadow.entry(checkpoint)
    tok_file = vocabularies.tokenizer_file(e["vocabulary"])
    model, processor = loading.load(shadow.PREFIX + checkpoint)
    q = question_text("object")
    got = answers.answers(processor, COCO_CLASSES, q)
    by_first: dict[int, list[str]] = {}
    for a in got:
        by_first.setdefault(a.tokens[0], []).append(a.word)
    collisions = sorted(v for v in by_first.values() if len(v) > 1)
    prompt = build_prompt(processor, q)
    inputs = processor(images=[Image.new("RGB", IMAGE_SIZE, "gray")], text=[prompt], return_tensors="pt")
    g = tokens.resolve(processor, model.config, q, inputs)
    ids = inputs["input_ids"][0]
    tok = processor.tokenizer
    return {"model": checkpoint, "family": e["family"],
            "tokenizer": {"vocabulary": e["vocabulary"], "package": vocabularies.PACKAGES[e["vocabulary"]],
                          "file": tok_file.relative_to(REPO_ROOT).as_posix() if tok_file.is_relative_to(REPO_ROOT)
                          else str(tok_file), "sha256": file_sha256(vocabularies.source_file(e["vocabulary"]))},
            "template": e["template"],
            "template_sha256": file_sha256(shadow.TEMPLATE_DIR / f"{e['template']}.jinja"),
            "answer_separator": answers.answer_form(processor, q).separator,
            "classes_scored": len({(a.forced, a.target_id) for a in got}),
            "classes_decided_after_the_first_token": sum(a.decision > 0 for a in got),
            "first_token_collisions_resolved": collisions,
            "role_tokens": tok.convert_ids_to_tokens(ids[g["role"]].tolist()),
            "image_tokens": int(g["image"].numel()),
            "text_heads": {"layers": e["text"]["layers"], "heads": e["text"]["heads"], "kv_heads": e["text"]["kv_heads"]},
            "local_snapshot_differences": shadow.snapshot_differences(checkpoint)}


def chapters_passed(folder: Path | None) -> list[str]:
    """The notebooks of one checkpoint's ``shadows`` run (its folder) that executed to the end: those
    with a provenance record (the runner writes it only after the last cell ran)."""
    if folder is None:
        return []
    return sorted(p.stem for p in (Path(folder) / "_provenance").glob("[0-9][0-9]-*.json"))


def write(results: Path, folders: dict, lib_sha256: str = "") -> Path:
    """``<results>/realpath.json``: a record per checkpoint of ``folders`` (``{hub id: the folder of
    its shadows run, or None}``)."""
    records = []
    for c, folder in folders.items():
        rec = resolve(c)
        rec["mechanics_chapters_passed"] = chapters_passed(folder)
        records.append(rec)
    return _save(Path(results), {"library_sha256": lib_sha256, "image_size": list(IMAGE_SIZE), "records": records})


PLAN_FILE = REPO_ROOT / "book" / "results" / "plan_full.json"


def with_plan(data: dict, plan_file: Path = PLAN_FILE) -> dict:
    """The records with ``masks``, ``fit`` and ``peak_memory_gib`` of the full profile's plan."""
    plan = {r["model"]: r for r in json.loads(Path(plan_file).read_text())["checkpoints"]}
    for rec in data["records"]:
        p = plan.get(rec["model"])
        if p is not None:
            rec.update(masks=p["masks"], fit=p["fit"], peak_memory_gib=p["peak_memory_gib"])
    data["plan"] = Path(plan_file).name
    return data


def add_plan(results: Path) -> Path:
    """Refresh the plan's fields of ``<results>/realpath.json`` (after ``python -m headflow.plan``); the
    file's provenance record (``<results>/../_provenance/realpath.json``, if there) is brought up to date:
    its sha256 and when and from which plan it was refreshed."""
    path = _save(Path(results), json.loads((Path(results) / "realpath.json").read_text()))
    prov = Path(results).parent / "_provenance" / "realpath.json"
    if prov.exists():
        record = json.loads(prov.read_text())
        key = path.relative_to(Path(results).parent).as_posix()
        record.setdefault("outputs", {})[key] = sha256(path)
        plan = Path(results) / "plan_full.json"
        record["refreshed_with_plan"] = {"plan": plan.name, "plan_sha256": sha256(plan) if plan.exists() else None}
        prov.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def _save(results: Path, data: dict) -> Path:
    path = results / "realpath.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    plan_file = results / "plan_full.json" if (results / "plan_full.json").exists() else PLAN_FILE
    path.write_text(json.dumps(outputs.as_json(with_plan(data, plan_file)), indent=1, sort_keys=True))
    return path


def path(book: Path | None = None) -> Path:
    """``<book>/results/realpath.json``; for a book built elsewhere (a CI build into a temporary
    folder) that has none, the committed ``book/results/realpath.json``: only a shadows sweep writes it."""
    here = (book or outputs.book_dir()) / "results" / "realpath.json"
    return here if here.exists() else REPO_ROOT / "book" / "results" / "realpath.json"


def load(book: Path | None = None) -> dict:
    """The records of :func:`path`."""
    return json.loads(path(book).read_text())
