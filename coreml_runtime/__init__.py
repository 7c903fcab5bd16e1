"""Running and checking a written Core ML package without torch: the package's interface names and metadata
(`interface.py`, `package.py`), the numpy evaluator of its ML program (`mil_eval.py`), and its static ANE
checks (`ane_rules.py`).

Nothing here imports torch or a model: an app, a Mac without torch, or `ondevice verify` on a package only
needs the package. (coremltools itself imports torch when it is installed, to check its version; our
code never needs it: tests/test_layers.py runs a package with torch made unimportable.)"""
