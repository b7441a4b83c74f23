"""The inbox: users' notifications kept in SQL with read state (``pip install notifier[inbox]``)."""
