"""`blpseg app`: a local page (Gradio) to scribble on one's photos, see the model's prediction and
keep the scribbles as training data in the folder format. The page is page.py; what it computes
(brush colours to class ids, saving, the data summary) is in scribbles.py and data.py, testable
without a browser."""
