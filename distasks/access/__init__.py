"""Access control: who makes a request (principals from API keys or JWTs), what each may
do (scopes), and how much (rate limits, tenant quotas, failed-credential limits).

May import: `distasks.domain`, `distasks.config`, `distasks.store`, `distasks.broker`.
The HTTP layer (`distasks.api`) applies these rules; nothing here knows about requests.
"""
