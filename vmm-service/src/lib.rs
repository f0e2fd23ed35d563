//! The Formation VMM service.
