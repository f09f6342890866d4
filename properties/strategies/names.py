"""Names as the data set holds them: 1 to 12 lowercase letters (`names_st`), lists of 1 to 40 (`name_lists`)."""

from hypothesis import strategies as st

name_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
names_st = st.text(name_chars, min_size=1, max_size=12)
name_lists = st.lists(names_st, min_size=1, max_size=40)
