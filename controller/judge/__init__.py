"""Pure judgement: evidence from observations (analysis) and the decision state machine."""
