"""Running and checking a written Core ML package without torch: the package's interface names and metadata
(`interface.py`, `package.py`), the numpy evaluator of its ML program (`mil_eval.py`), and its static ANE
checks (`ane_rules.py`).

Nothing here imports torch or a model: an app, a Mac without torch, or `ondevice verify` on a package only
needs the package. (coremltools itself imports torch and transformers when they are installed, to check
their versions; our code never needs torch: tests/test_coreml_convert.py runs a package with torch made
unimportable.)"""
