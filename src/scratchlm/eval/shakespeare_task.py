"""A Shakespeare next-line benchmark, built from the plays the speedrun holds out.

Each item shows 4 to 8 consecutive lines of a play (speaker names and stage directions as they
stand in the text) and asks which of four lines comes next: the true next line, or one of three
distractors drawn from elsewhere in the same play. Distractors share the play's characters,
vocabulary and verse, so only a model that follows the sense, the metre and who is speaking
beats the chance rate of 0.25.

Only the held-out plays are used (the speedrun's `val_works`: Hamlet, The Tempest, Julius Caesar,
Twelfth Night, modern spelling), because neither the speedrun's tokenizer nor its model saw them:
both are trained on the other plays only, and the shards keep these works (Folio spelling
included) on the validation side. An item from a training play would measure how well the model
remembers the play, not how well it models Shakespeare; on held-out plays a score above chance is
generalization. (The speedrun also cuts from its validation text every 13-gram shared with a
training play; the items here come from the uncut plays, so a line quoted in another play can
still appear, as any benchmark may overlap its training data in a few passages.)

A second, easier variant (`shakespeare-word-order`) keeps the context and the true line but
makes the distractors the true line's own words in other orders: it asks whether the model knows
English word order and the metre, which even a small model trained on the other plays learns,
and which a model that has learnt nothing cannot tell apart (chance, 0.25). The next-line variant
asks for sense across lines, which needs a larger model.

Answer and distractor lines are lines of speech with at least four words: never blank lines,
stage directions, speaker names, act or scene headings or the front matter. The build is
deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scratchlm.data.documents import Document
from scratchlm.errors import UserError

HELD_OUT_WORKS = ("hamlet_gut", "tempest_gut", "julius_caesar_gut", "twelfth_night_gut")
"""The speedrun's default `val_works`; a test checks they agree."""
CHOICES = 4
MIN_CONTEXT_LINES, MAX_CONTEXT_LINES = 4, 8
MIN_WORDS = 4
DISTRACTORS = ("lines", "shuffled")
TASKS = {"shakespeare-next-line": "lines", "shakespeare-word-order": "shuffled"}
"""The built-in tasks by name: which distractors each draws."""

_BODY_START = re.compile(r"^ACT\s+(?:I|1)\b", re.IGNORECASE)
_HEADING = re.compile(r"^(?:ACT|SCENE)\b", re.IGNORECASE)


def _speech_mask(lines: Sequence[str]) -> list[bool]:
    """Whether each line is speech: not blank, not inside or made of a stage direction, not a
    speaker name ("Ham.", "FIRST CITIZEN."), not a heading, not an all-capitals line ("SONG")."""
    mask, in_direction = [], False
    for line in lines:
        outside = []
        for char in line:
            if char == "[":
                in_direction = True
            elif char == "]":
                in_direction = False
            elif not in_direction:
                outside.append(char)
        text = "".join(outside).strip()
        words = text.split()
        speaker = text.endswith(".") and len(words) <= 4 and all(w[0].isupper() for w in words)
        shouting = not any(c.islower() for c in text)
        mask.append(bool(text) and text == line.strip() and not speaker and not shouting and not _HEADING.match(text))
    return mask


def _shuffled(line: str, shown: set[str], rng: random.Random) -> list[str]:
    """Three orderings of the line's words other than its own (and than any line shown)."""
    words, out = line.split(), []
    for _ in range(100):
        candidate = " ".join(rng.sample(words, len(words)))
        if candidate != line and candidate not in out and candidate not in shown:
            out.append(candidate)
            if len(out) == CHOICES - 1:
                break
    return out


def _play_items(document: Document, rng: random.Random, distractors_from: str = "lines") -> list[dict[str, Any]]:
    """Every possible item of one play (the context length drawn per item)."""
    lines = [line.rstrip() for line in document.text.split("\n")]
    start = next((i for i, line in enumerate(lines) if _BODY_START.match(line.strip())), None)
    if start is None:
        raise UserError(f"{document.id} has no 'ACT I' heading, so it is not a play this task can be built from.")
    speech = _speech_mask(lines)
    answers = [i for i in range(start, len(lines)) if speech[i] and len(lines[i].split()) >= MIN_WORDS]
    pool = sorted({lines[i].strip() for i in answers})
    pool_set = set(pool)
    items = []
    for i in answers:
        before = [j for j in range(start + 1, i) if lines[j].strip()]
        k = rng.randint(MIN_CONTEXT_LINES, MAX_CONTEXT_LINES)
        if len(before) < k:
            continue
        first = before[-k]
        context = "\n".join(lines[first:i]) + "\n"
        true_line = lines[i].strip()
        shown = {lines[j].strip() for j in range(first, i + 1)}
        if len(pool_set - shown) < CHOICES - 1:
            continue
        distractors: list[str] = []
        if distractors_from == "shuffled":
            distractors = _shuffled(true_line, shown, rng)
            if len(distractors) < CHOICES - 1:
                continue
        while len(distractors) < CHOICES - 1:
            candidate = pool[rng.randrange(len(pool))]
            if candidate not in shown and candidate not in distractors:
                distractors.append(candidate)
        choices = [true_line, *distractors]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(true_line), "work": document.meta["work"], "line": i + 1})
    return items


def next_line_items(documents: Iterable[Document], n_items: int = 400, seed: int = 0, works: Sequence[str] = HELD_OUT_WORKS, distractors: str = "lines") -> list[dict[str, Any]]:
    """`n_items` next-line items from the modern-spelling texts of `works` among `documents`,
    sampled without replacement, in a seeded random order. `distractors`: "lines" (other lines
    of the play) or "shuffled" (the true line's own words in other orders)."""
    if distractors not in DISTRACTORS:
        raise UserError(f"distractors is {distractors!r}; choose one of: {', '.join(DISTRACTORS)}.")
    plays = sorted((d for d in documents if d.meta.get("work") in works and d.meta.get("spelling") == "modern"), key=lambda d: d.id)
    missing = sorted(set(works) - {d.meta["work"] for d in plays})
    if missing:
        raise UserError(f"The corpus has no modern-spelling text of {', '.join(missing)}; the next-line task needs every held-out play.")
    candidates: list[dict[str, Any]] = []
    for play in plays:
        # One RNG per play, seeded by its id: a play's items do not depend on the other plays.
        candidates.extend(_play_items(play, random.Random(f"scratchlm-next-line:{seed}:{play.id}"), distractors))
    if not 1 <= n_items <= len(candidates):
        raise UserError(f"n_items is {n_items}; the held-out plays give between 1 and {len(candidates)} items.")
    return random.Random(f"scratchlm-next-line:{seed}").sample(candidates, n_items)


def build_next_line_task(out_path: str | Path, n_items: int = 400, seed: int = 0, documents: Iterable[Document] | None = None, works: Sequence[str] = HELD_OUT_WORKS, distractors: str = "lines") -> Path:
    """Write the next-line task as JSONL (context, choices, label, plus work and line number) to
    `out_path` and return it. `documents` default to the Shakespeare corpus (fetched if needed)."""
    if documents is None:
        from scratchlm.data.corpus import corpus_documents

        documents = corpus_documents("shakespeare")
    items = next_line_items(documents, n_items, seed, works, distractors)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    temporary.replace(out)
    return out
