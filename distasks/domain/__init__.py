"""The domain: what a task, a run, a retry, a tenant and a cron slot are, and the errors
distasks speaks in. Pure rules, no I/O.

May import: the standard library and well-kept libraries only; never another distasks
package (everything else builds on this one).
"""
