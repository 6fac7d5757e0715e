"""Table I: the baseline (cross entropy on scribbles), + LAM, + LAM + BLP loss.
Usage: python experiments/table1.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

ROWS = {
    "baseline (CE)": ["model.lam=false", "loss.seg=ce", "loss.seg_options={}"],
    "+ LAM": ["model.lam=true", "loss.seg=ce", "loss.seg_options={}"],
    "+ LAM + BLP": ["model.lam=true", "loss.seg=blp"],
}

if __name__ == "__main__":
    run_table("table1", "Table I: LAM and the BLP loss", ROWS, sys.argv[1:])
