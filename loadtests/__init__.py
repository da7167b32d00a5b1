"""Load generators and scenarios that print comparable figures."""
