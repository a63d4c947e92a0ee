"""Pure Istio: the routes a step means, rendered to VirtualService and DestinationRule, tenancy
and adoption rules. No I/O; knows nothing of metrics.
"""
