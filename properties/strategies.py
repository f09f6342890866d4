"""Shared hypothesis strategies. Each builds valid inputs directly rather than filtering."""

from hypothesis import strategies as st

name_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
names_st = st.text(name_chars, min_size=1, max_size=12)
name_lists = st.lists(names_st, min_size=1, max_size=40)
