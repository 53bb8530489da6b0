"""Thin adapters: the only modules that import pynetdicom, paho, sqlite3, psycopg, pyudev."""
