"""The toy language-model corpus of the command-line tests: an 11-word text, prepared with
`engine prepare text` into FOLDER/c.h5 (25 training batches of 32 n-grams at context 2), and the
flags of a tiny MLP language model on the CPU."""
from __future__ import annotations

from engine.cli import main

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40
LM = ["--context", "2", "--embed", "8", "--hidden", "16", "--device", "cpu", "--no-progress"]


def prepare_toy_corpus(folder):
    """Write train/valid/test texts into `folder`, prepare them; the HDF5 path as a str."""
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (folder / name).write_text(text)
    out = folder / "c.h5"
    assert main(["prepare", "text", str(folder / "train.txt"), "--valid", str(folder / "valid.txt"),
                 "--test", str(folder / "test.txt"), "--output", str(out)]) == 0
    return str(out)
