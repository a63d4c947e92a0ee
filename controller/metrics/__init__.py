"""Pure metrics: samples, the PromQL catalog, the metric kinds (one module per source under
``kinds/``) and reading answers into observations. No I/O; knows nothing of Istio objects.
"""
