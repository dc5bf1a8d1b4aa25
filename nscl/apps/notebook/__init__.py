"""What every notebook imports as ``nb`` (``from nscl.apps import notebook as nb``): the facade of
three small modules plus the claim checks.

* :mod:`.params` — :func:`parameters` turns the ``parameters`` cell into a validated config
  (unknown names fail as one ``error:`` line naming the key and the closest valid ones).
* :mod:`.orchestrate` — :func:`run_methods` (several methods on one stream), :func:`run_grid` /
  :func:`run_sweep` (many runs on the available cores, ``workers`` at once), :func:`find_runs` /
  :func:`require_runs`, :func:`train_until` with :func:`layer_inputs` / :func:`task_gradient`.
* :mod:`.record` — :func:`save_results` / :func:`load_results` (the notebook's ``results.json``),
  :func:`figure_path`, :func:`describe`, :func:`metrics_record`.
* :mod:`.claims` — :func:`expect` (a markdown sentence held by the numbers) and :func:`versus`.
* :func:`check_above_chance` (:mod:`nscl.analysis.chance`) ends every training notebook.

A typical notebook::

    from nscl.apps import notebook as nb
    cfg = nb.parameters(globals(), extras={"methods": ["finetune", "adam_nscl"],
                                           "output_dir": "results/notebooks/00_quickstart"})
    results = nb.run_methods(cfg, cfg["methods"], cfg["output_dir"])   # {method: results dict}
    nb.expect(results["adam_nscl"]["metrics"]["bwt"] > results["finetune"]["metrics"]["bwt"] + 2, "...")
    nb.save_results(cfg["output_dir"], results, cfg=cfg, figures=[...])

Tables come from :mod:`nscl.analysis.tables` and figures from :mod:`nscl.analysis.plots`.
Outputs of committed notebooks are checked by nbval, so print rounded numbers, never times or
absolute paths, end figure cells with ``plt.show()`` and bind the value of a last-line call you don't
want displayed (``_ = nb.save_results(...)``: under nbval a trailing ``;`` does not suppress it).
"""

from ...analysis.chance import ChanceLevelError, at_chance, check_above_chance
from ...analysis.probes import layer_inputs, task_gradient
from .claims import ClaimError, expect, versus
from .orchestrate import (
    default_workers,
    find_runs,
    n_tasks,
    require_runs,
    run_grid,
    run_methods,
    run_sweep,
    train_until,
)
from .params import Params, assigned_names, output_root, parameters, project_root, resolve_path
from .record import NOTEBOOK_RESULTS_SCHEMA, describe, figure_path, load_results, metrics_record, save_results

__all__ = [
    "ChanceLevelError",
    "ClaimError",
    "NOTEBOOK_RESULTS_SCHEMA",
    "Params",
    "assigned_names",
    "at_chance",
    "check_above_chance",
    "default_workers",
    "describe",
    "expect",
    "figure_path",
    "find_runs",
    "layer_inputs",
    "load_results",
    "metrics_record",
    "n_tasks",
    "output_root",
    "parameters",
    "project_root",
    "require_runs",
    "resolve_path",
    "run_grid",
    "run_methods",
    "run_sweep",
    "save_results",
    "task_gradient",
    "train_until",
    "versus",
]
