"""Database URLs to Django ``DATABASES`` entries, with no dependency beyond the standard library.

``postgresql://user:password@host:port/name?sslmode=require`` (also ``postgres://``),
``mysql://user:password@host:port/name`` and ``sqlite:///absolute/path`` (``sqlite://``
alone is an in-memory database). Query parameters become ``OPTIONS``.
"""
from __future__ import absolute_import

try:
    from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit
except ImportError:  # Python 2
    from urllib import quote, unquote
    from urlparse import parse_qsl, urlsplit, urlunsplit

ENGINES = {
    'postgresql': 'django.db.backends.postgresql',
    'postgres': 'django.db.backends.postgresql',
    'pgsql': 'django.db.backends.postgresql',
    'mysql': 'django.db.backends.mysql',
    'sqlite': 'django.db.backends.sqlite3',
}

#: Django's vendor name for each scheme.
VENDORS = {
    'postgresql': 'postgresql', 'postgres': 'postgresql', 'pgsql': 'postgresql',
    'mysql': 'mysql', 'sqlite': 'sqlite',
}


def _option(value):
    return int(value) if value.isdigit() else value


def vendor(url):
    """``'postgresql'``, ``'mysql'`` or ``'sqlite'`` for a database URL."""
    scheme = urlsplit(url).scheme
    try:
        return VENDORS[scheme]
    except KeyError:
        raise ValueError('unsupported database URL scheme {0!r} in {1!r}'.format(scheme, url))


def parse(url):
    """The Django ``DATABASES`` entry for ``url``."""
    parts = urlsplit(url)
    kind = vendor(url)
    if kind == 'sqlite':
        # sqlite:///tmp/db.sqlite3 (and sqlite:////tmp/db.sqlite3) name /tmp/db.sqlite3.
        path = unquote(url.split('://', 1)[1].split('?', 1)[0])
        path = '/' + path.lstrip('/') if path.strip('/') else ':memory:'
        return {'ENGINE': ENGINES['sqlite'], 'NAME': path}
    return {
        'ENGINE': ENGINES[parts.scheme],
        'NAME': unquote(parts.path.lstrip('/')),
        'USER': unquote(parts.username or ''),
        'PASSWORD': unquote(parts.password or ''),
        'HOST': parts.hostname or '',
        'PORT': str(parts.port or ''),
        'OPTIONS': dict((key, _option(value)) for key, value in parse_qsl(parts.query)),
    }


def with_database(url, name):
    """``url`` naming the database ``name`` instead, same server, user and options."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, '/' + quote(name), parts.query, ''))


def database_name(url):
    return unquote(urlsplit(url).path.lstrip('/'))
