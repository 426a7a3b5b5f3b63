"""The ensemble methods a spec of kind `ensemble` names: here, apart from model.py, so that the command line's
parser names them without loading the spec's model (pydantic and the search vocabulary, ~0.35 s)."""

ENSEMBLE_METHODS = {
    "topk": "average the K best trials",
    "greedy": "Caruana forward selection on validation loss",
}
DEFAULT_ENSEMBLE_METHOD = "topk"
