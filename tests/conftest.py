import os
import sys

# tests/lam_cases.py is imported by the backend tests as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
