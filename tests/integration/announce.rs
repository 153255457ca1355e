//! announce with real tools and a real ZooKeeper.
