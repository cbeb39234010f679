"""Serving: an HTTP inference server with dynamic batching, a web page to try a model, batch
inference over folders of any size.

- :mod:`effnet.serve.server`: :class:`Classifier` (a model, its engine and preprocessing),
  :class:`DynamicBatcher` (concurrent requests -> one engine call), :func:`create_app`
  (FastAPI: ``/predict``, ``/predict/batch``, ``/health``, ``/metadata``, ``/metrics``,
  and with ``app=True`` the web page and ``/explain``), :func:`serve` (uvicorn).
- :mod:`effnet.serve.batch`: :func:`predict_batch` (Ray Data, or in-process without Ray),
  Parquet output, resumable.

Uses :mod:`effnet.deploy`'s engines and :mod:`effnet.data`'s one decoder; adds no model code.
Needs ``pip install 'effnet[serve]'`` (FastAPI, uvicorn, python-multipart, prometheus_client,
onnxruntime) and, for Ray, ``'effnet[batch]'``.
"""
