"""Tables and figures from run records (pandas, seaborn)."""
