"""Table IV: the LAM's sigma fixed at 2, 4, 6, 8 and learnable (from 6).
Usage: python experiments/table4.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

ROWS = {
    **{f"sigma {s}": ["model.lam=true", f"model.sigma={s}.0", "model.learnable_sigma=false"] for s in (2, 4, 6, 8)},
    "learnable (from 6)": ["model.lam=true", "model.sigma=6.0", "model.learnable_sigma=true"],
}

if __name__ == "__main__":
    run_table("table4", "Table IV: LAM sigma (BLP loss)", ROWS, sys.argv[1:])
