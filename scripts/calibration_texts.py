"""Writes the texts of the README's `turbosparse calibrate` table into a folder, from installed packages only:

    plays.txt          Shakespeare's plays except Macbeth (modern spelling): the calibration text
    macbeth.txt        held out
    news.txt           held out, another genre: Australian news stories (gensim's test data)
    encyclopedia.txt   held out, another genre: Wikipedia article openings (gensim's test data)
    news_dev.txt       the second half of news.txt (from the first line break after its middle): the dev split that
                       choices of calibration (scores, allocation) are made on; the table measures the first tokens
                       of news.txt, far from it

Usage: .venv/bin/python scripts/calibration_texts.py DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from turbosparse.assets import shakespeare_dir
from turbosparse.predictor_train.corpora import encyclopedia_text, macbeth_text, news_text
from turbosparse.predictor_train.data import read_text


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "plays": read_text(shakespeare_dir(), exclude=("macbeth", "_gut_f.")),
        "macbeth": macbeth_text(),
        "news": news_text(),
        "encyclopedia": encyclopedia_text(),
    }
    news = texts["news"]
    texts["news_dev"] = news[news.index("\n", len(news) // 2) + 1 :]
    for name, text in texts.items():
        path = folder / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {len(text)} characters")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where the texts are written (made when missing)")
    main(parser.parse_args().folder)
