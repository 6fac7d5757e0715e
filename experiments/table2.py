"""Table II: with the LAM, cross entropy against focal against BLP loss.
Usage: python experiments/table2.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

ROWS = {
    "CE": ["model.lam=true", "loss.seg=ce", "loss.seg_options={}"],
    "focal": ["model.lam=true", "loss.seg=focal", "loss.seg_options={gamma: 2.0}"],
    "BLP": ["model.lam=true", "loss.seg=blp"],
}

if __name__ == "__main__":
    run_table("table2", "Table II: segmentation losses (with the LAM)", ROWS, sys.argv[1:])
