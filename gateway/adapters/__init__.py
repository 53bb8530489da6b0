"""Thin adapters: the only modules that import pynetdicom, paho, sqlite-utils, pyudev."""
