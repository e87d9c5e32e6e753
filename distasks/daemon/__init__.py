"""The daemon at run time: the supervisor and every component it runs in its nursery
(intake, worker pool, completer, mover, reaper, reconciler, heartbeat, control, waiters,
scheduler, outbox relays, reporter), with the operations they share (commit-then-copy in
`mirror`, creation rules, schedule definitions) and what keeps them observable (health, progress,
metrics, sd_notify).

May import: everything below it (`access`, `store`, `broker`, `handlers`, `config`,
`domain`). Only `supervisor` may import `distasks.api` (it serves the app); the API in
turn calls into the components here.
"""
