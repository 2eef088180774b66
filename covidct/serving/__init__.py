"""Everything Triton's Python-backend stub imports: the ensemble's tensor names
(:mod:`.tensors`), the step functions (:mod:`.steps`), request validation, the network
runners and the one :class:`~covidct.serving.triton_model.TritonPythonModel`.

Nothing here imports the training loop, the data sets or a CLI.
"""
