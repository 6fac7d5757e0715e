"""Table III: the LAM's similarity, low-level features + position, features only, position only.
Usage: python experiments/table3.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

ROWS = {
    "features + position": ["model.lam=true", "model.similarity=both"],
    "features": ["model.lam=true", "model.similarity=features"],
    "position": ["model.lam=true", "model.similarity=position"],
}

if __name__ == "__main__":
    run_table("table3", "Table III: LAM similarity (BLP loss)", ROWS, sys.argv[1:])
