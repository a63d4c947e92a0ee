"""The ModelRollout resource: its typed model, units, kinds, rules, schema, loading, schedule.

The bottom layer: everything above reads numbers and types from here, never policy text.
"""
