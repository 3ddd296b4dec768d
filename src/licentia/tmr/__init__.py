"""The 2-of-3 redundant (TMR) license server: seats in etcd, and (later) the front end."""
