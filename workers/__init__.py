"""Celery workers: `celery -A workers worker` finds the app as `workers.celery`."""

from workers.app import app as celery

__all__ = ["celery"]
