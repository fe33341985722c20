package passport.authz_test

this is not rego and must not be loaded
