//! Echo's configuration from a TOML file or etcd, validated key by key against the machines'
//! `KeySpec`s. (Being filled.)
