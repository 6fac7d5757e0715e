"""Table VI: label diffusion (scribbles expanded into SLIC superpixels before training, ScribbleSup
style) against gradient diffusion (the LAM), and both; all with cross entropy on the (expanded)
scribbles, without the BLP loss, as in the paper. The first row is Table I's baseline.
Usage: python experiments/table6.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

CE = ["loss.seg=ce", "loss.seg_options={}"]
# scikit-image's SLIC defaults; on the synthetic train set they label 33% of the pixels (scribbles:
# 6%) with 95% of the labels right
DIFFUSION = "data.train.label_diffusion={segments: 100, compactness: 10.0}"

ROWS = {
    "neither (CE baseline)": ["model.lam=false", *CE],
    "label diffusion": ["model.lam=false", *CE, DIFFUSION],
    "gradient diffusion (LAM)": ["model.lam=true", *CE],
    "both": ["model.lam=true", *CE, DIFFUSION],
}

if __name__ == "__main__":
    run_table(
        "table6", "Table VI: label diffusion (superpixels) and gradient diffusion (LAM), CE loss", ROWS, sys.argv[1:]
    )
