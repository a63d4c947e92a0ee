"""Every name canarist writes into other people's objects and traffic: one place to read them all.

Labels, annotations and the finalizer on Kubernetes objects, the request header and the metric tag
of the randomised split, and the name canarist's Events are reported under. A change here is a
change of the wire format: existing rollouts and dashboards read these.
"""

from __future__ import annotations

# --- on the ModelRollout ------------------------------------------------------------------------

#: Annotations through which people (and ``canarist promote|abort|...``) steer a rollout.
COMMAND_ANNOTATION = "canarist.io/command"
COMMAND_BY_ANNOTATION = "canarist.io/command-by"
COMMAND_ID_ANNOTATION = "canarist.io/command-id"
COMMAND_AT_ANNOTATION = "canarist.io/command-at"  # when it was issued (RFC 3339): commands expire
#: Keeps a deleted rollout until canarist has restored the routes it replaced.
FINALIZER = "canarist.io/restore-routes"

# --- on the Istio objects canarist writes or adopts ---------------------------------------------

#: Which rollout an object belongs to.
ROLLOUT_LABEL = "canarist.io/rollout"
#: The canary's weight in percent, as rendered.
WEIGHT_ANNOTATION = "canarist.io/canary-weight"
#: On a DestinationRule or VirtualService canarist adopted: the user's original spec, to restore.
ORIGINAL_ANNOTATION = "canarist.io/original-spec"
#: On an adopted VirtualService: the weights canarist set, to tell them from a person's edit.
MANAGED_WEIGHTS_ANNOTATION = "canarist.io/managed-weights"
#: On an adopted object: the rollout that adopted it.
ADOPTED_LABEL = "canarist.io/adopted-by"

# --- on Events ----------------------------------------------------------------------------------

#: The reporting controller of every Event canarist records.
REPORTING_CONTROLLER = "canarist.io/controller"

# --- in the traffic and its metrics --------------------------------------------------------------

#: The request header Istio matches to send a request to the randomised split.
SPLIT_HEADER = "x-canarist-split"
#: The metric tag (Istio Telemetry) that marks requests of the randomised split, and its value.
SPLIT_TAG = "canarist_split"
SPLIT_VALUE = "randomised"

# --- the standard label on everything canarist renders -------------------------------------------

MANAGED_BY = {"app.kubernetes.io/managed-by": "canarist"}
