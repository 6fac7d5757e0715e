"""Table V: the LAM's aggregation region in training: all pixels, scribbled (labeled) pixels only,
unscribbled (unlabeled) pixels only (model.key_mask). BLP loss, as the full model. At inference
there are no scribbles, so every pixel is a key in every row.
Usage: python experiments/table5.py [--results results/ablations] [--seeds 0,1,2] [KEY=VALUE ...]"""

import sys

from blpseg.analysis.ablation import run_table

ROWS = {
    "all pixels": ["model.lam=true", "model.key_mask=null"],
    "labeled only": ["model.lam=true", "model.key_mask=labeled"],
    "unlabeled only": ["model.lam=true", "model.key_mask=unlabeled"],
}

if __name__ == "__main__":
    run_table("table5", "Table V: LAM aggregation region (BLP loss)", ROWS, sys.argv[1:])
