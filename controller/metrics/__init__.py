"""Pure metrics: samples, the PromQL catalog and reading answers into observations. No I/O;
knows nothing of Istio objects.
"""
