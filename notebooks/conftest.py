"""``pytest --nbval notebooks/`` checks the committed outputs; run it like ``make test`` does even when
called by hand: no progress bars (``NSCL_QUIET``) and the notebooks' runs in one fresh temporary
folder (``NSCL_OUTPUT_ROOT``; 04 reads the runs 00-03 wrote there), unless the caller set them."""
import os
import shutil
import tempfile

os.environ.setdefault("NSCL_QUIET", "1")
_OWN_ROOT = None
if not os.environ.get("NSCL_OUTPUT_ROOT"):
    _OWN_ROOT = os.environ["NSCL_OUTPUT_ROOT"] = tempfile.mkdtemp(prefix="nscl-nbval-")


def pytest_unconfigure(config):
    if _OWN_ROOT:
        shutil.rmtree(_OWN_ROOT, ignore_errors=True)
