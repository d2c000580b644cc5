"""How builtin_*_{implications,aliases}.csv were made: the relations of each vocabulary's most
frequent tags, taken from the public-domain (Unlicense) snapshots of e621's exports and
Danbooru's API in shared/data/tags (archive DraconicDragon/dbr-e621-lists-archive).

    python tag_lists/make_builtin.py ../shared/data/tags
"""

import csv
import gzip
import sys
from pathlib import Path

from lorakit.tagging.relations import build, read_tag_list

TOP = 1500  # tags by post count whose relations are kept


def main(data: Path) -> None:
    out = Path(__file__).parent
    for vocab in ("danbooru", "e621"):
        folder = data / vocab
        tags_file = next(folder.glob("tags-*.csv.gz"))
        names, _ = read_tag_list(tags_file)
        counts = {}
        with gzip.open(tags_file, "rt", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) > 2 and row[2].isdigit():
                    counts[row[0]] = int(row[2])
        top = set(sorted(counts, key=counts.get, reverse=True)[:TOP])
        rel = build(vocab, sorted(folder.glob("tag_*.csv.gz")), "snapshot")
        implications = sorted((a, c) for a, cs in rel.implies.items() if a in top for c in cs)
        aliases = sorted((a, c) for a, c in rel.aliases.items() if c in top)
        for kind, rows in (("implications", implications), ("aliases", aliases)):
            with open(out / f"builtin_{vocab}_{kind}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["antecedent_name", "consequent_name"])
                writer.writerows(rows)
            print(vocab, kind, len(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
