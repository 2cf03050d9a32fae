//! `echo terminal`: the reference master / slave terminal. (Being filled.)
