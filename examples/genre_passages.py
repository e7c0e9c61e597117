"""Comedy or tragedy? Passages of the default corpus labelled by their play's genre in the First
Folio, written as CSV files for `scratchlm finetune classify`.

The test plays are the four the speedrun holds out of pretraining (Hamlet, Julius Caesar, The
Tempest, Twelfth Night), so the test measures passages of plays that neither the language model
nor the classifier has read; two more plays (Macbeth, Much Ado About Nothing) are the validation
split; the other twenty comedies and tragedies train. Histories and poems are left out.

    python examples/genre_passages.py runs/genre-data
    scratchlm finetune classify --set data.train=runs/genre-data/train.csv \\
        --set data.val=runs/genre-data/val.csv --set data.test=runs/genre-data/test.csv \\
        --set train.init_from=runs/speedrun/train --set train.out_dir=runs/genre
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from scratchlm.data.corpus import corpus_documents

COMEDIES = {
    "alls_well_that_ends_well_gut", "as_you_like_it_gut", "comedy_of_errors_gut", "loves_labours_lost_gut",
    "measure_for_measure_gut", "merchant_of_venice_gut", "merry_wives_of_windsor_gut", "midsummer_nights_dream_gut",
    "much_ado_about_nothing_gut", "taming_of_the_shrew_gut", "tempest_gut", "twelfth_night_gut",
    "two_gentlemen_of_verona_gut", "winters_tale_gut",
}
TRAGEDIES = {
    "antony_and_cleopatra_gut", "coriolanus_gut", "cymbeline_gut", "hamlet_gut", "julius_caesar_gut", "lear_gut",
    "macbeth_gut", "othello_gut", "romeo_and_juliet_gut", "timon_of_athens_gut", "tragedy_of_titus_andronicus_gut",
    "troilus_and_cressida_gut",
}
TEST = {"hamlet_gut", "julius_caesar_gut", "tempest_gut", "twelfth_night_gut"}
VAL = {"macbeth_gut", "much_ado_about_nothing_gut"}
PASSAGE_CHARS = 400
"""Consecutive speeches are joined until a passage holds at least this many characters (~100 tokens)."""


def passages(text: str) -> list[str]:
    out, current = [], ""
    for speech in (s.strip() for s in text.split("\n\n")):
        if not speech:
            continue
        current = f"{current}\n\n{speech}" if current else speech
        if len(current) >= PASSAGE_CHARS:
            out.append(current)
            current = ""
    return out


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for document in corpus_documents("shakespeare"):
        if document.meta["spelling"] != "modern" or document.id not in COMEDIES | TRAGEDIES:
            continue
        split = "test" if document.id in TEST else "val" if document.id in VAL else "train"
        label = "comedy" if document.id in COMEDIES else "tragedy"
        rows[split] += [(passage, label) for passage in passages(document.text)]
    for split, items in rows.items():
        with (out_dir / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(items)
        counts = {label: sum(1 for _, l in items if l == label) for label in ("comedy", "tragedy")}
        print(f"{out_dir / f'{split}.csv'}: {len(items)} passages {counts}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/genre-data"))
