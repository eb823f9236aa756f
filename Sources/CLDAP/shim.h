#ifndef POSTERN_CLDAP_SHIM_H
#define POSTERN_CLDAP_SHIM_H
#define LDAP_DEPRECATED 0
#include <sys/time.h>
#include <ldap.h>
#include <lber.h>
#endif
