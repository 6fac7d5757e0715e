"""Reproductions of the paper's analyses: annotation bias (Fig. 1, 7a), loss maps (Fig. 8),
LAM fidelity, and the ablation tables' runner."""
