"""Math only: covariance, null spaces, the projected optimizer, models, pruning and low-rank
factorisation, metrics. Nothing here reads config, writes files or imports pandas."""
