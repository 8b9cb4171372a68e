package agent

import (
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
)

// initialEnv drops from the process environment the keys copied there
// from the same env file at start (by an EnvironmentFile= a drop-in may
// add; the shipped unit has none): otherwise a key later removed from the
// file would fall back to its old value instead of the default.
func (l *loop) initialEnv() {
	getenv := l.opts.Getenv
	vars, err := config.ReadEnvFile(l.opts.EnvFile)
	if err != nil {
		l.baseEnv = getenv
		return
	}
	fromFile := map[string]string{}
	for _, v := range vars {
		fromFile[v.Key] = v.Value
	}
	l.baseEnv = func(k string) string {
		if fv, ok := fromFile[k]; ok && getenv(k) == fv {
			return ""
		}
		return getenv(k)
	}
}

// loadConfig reads the env file and applies it if it is valid and differs
// from the running configuration. force also re-queues images waiting for
// the next refresh.
func (l *loop) loadConfig(initial, force bool) {
	if force {
		defer l.requeue(false)
	}
	vars, err := config.ReadEnvFile(l.opts.EnvFile)
	switch {
	case err == nil:
	case config.IsNotExist(err) && l.cfg == nil:
		if initial {
			l.log.Info("env file absent; using the process environment and defaults", "env_file", l.opts.EnvFile)
		}
		vars = nil
	case config.IsNotExist(err):
		l.log.Warn("env file is gone; keeping the last good configuration", "env_file", l.opts.EnvFile, "prefix", l.cfg.Prefix)
		l.cfgErr = fmt.Errorf("%s is gone; running on the last good configuration", l.opts.EnvFile)
		return
	default:
		l.refuse(err)
		return
	}
	cfg, err := config.LoadConfig(l.opts.EnvFile, vars, l.baseEnv)
	if err == nil {
		config.WarnEnvFileMode(l.opts.Logger, l.opts.EnvFile, vars)
		config.WarnUnusedKeys(l.opts.Logger, l.opts.EnvFile, vars)
		_, err = cfg.Images()
	}
	if err != nil {
		l.refuse(err)
		return
	}
	if l.holdFlip(cfg) {
		l.cfgErr = nil
		return
	}
	if l.cfg != nil && reflect.DeepEqual(*l.cfg, cfg) {
		l.log.Debug("env file read; configuration unchanged")
		l.cfgErr = nil
		return
	}
	l.apply(cfg)
}

// refuse records a configuration that cannot be used.
func (l *loop) refuse(err error) {
	l.cfgErr = err
	l.a.metrics.configLoad(false)
	if l.cfg == nil {
		l.log.Error("configuration refused; nothing to pull until the env file is fixed", "env_file", l.opts.EnvFile, "error", errText(err))
		return
	}
	l.log.Error("configuration refused; keeping the last good configuration", "env_file", l.opts.EnvFile, "error", errText(err), "prefix", l.cfg.Prefix)
}

// apply makes cfg the running configuration: the Docker client (built
// once), the credential selection and the puller, then the image set.
func (l *loop) apply(cfg config.Config) {
	prev := l.cfg
	if l.engine == nil {
		e, err := l.opts.NewEngine(cfg.DockerEndpoint())
		if err != nil {
			l.refuse(err)
			return
		}
		l.engine = e // kept even when the rest is refused
	} else if prev != nil && cfg.DockerEndpoint() != prev.DockerEndpoint() {
		l.log.Warn("DOCKER_HOST, DOCKER_TLS_VERIFY or DOCKER_CERT_PATH changed; restart the agent to use it", "in_use", prev.DockerHost, "configured", cfg.DockerHost,
			"tls_verify_in_use", prev.DockerTLSVerify, "tls_verify_configured", cfg.DockerTLSVerify)
		cfg.DockerHost, cfg.DockerTLSVerify, cfg.DockerCertPath = prev.DockerHost, prev.DockerTLSVerify, prev.DockerCertPath
	}
	authz, err := l.opts.NewAuthorizer(cfg)
	var puller *pull.Puller
	if err == nil {
		po := pull.OptionsFor(cfg, l.opts.Concurrency, l.opts.Timeouts)
		po.Now = l.clock.Now
		puller, err = pull.NewPuller(l.engine, authz, l.opts.Logger, po)
	}
	if err != nil {
		l.refuse(err)
		return
	}
	images, _ := cfg.Images()
	l.cfg, l.cfgErr, l.puller, l.cfgAt, l.authz = &cfg, nil, puller, l.clock.Now(), authz
	l.hostInfo = map[string]state.HostDoc{}
	l.described = describeHosts(authz, images)
	attrs := []any{"prefix", cfg.Prefix, "images", len(images), "platform", cfg.Platform, "env_file", l.opts.EnvFile}
	if prev != nil && prev.Prefix != cfg.Prefix {
		attrs = append(attrs, "previous_prefix", prev.Prefix)
		l.previous = l.previous[:0]
		if old, err := prev.Images(); err == nil {
			for _, img := range old {
				l.previous = append(l.previous, img.Ref)
				if tag, ok := l.fallbackTags[img.Ref]; ok {
					l.previous = append(l.previous, tag.Ref) // what the name was given from
				}
			}
		}
	}
	l.log.Info("configuration loaded", attrs...)
	l.a.metrics.configLoad(true)
	l.reconcile(cfg, images, prev != nil && prev.Platform != cfg.Platform)
}

// describeHosts says where the credentials of each host come from, as far
// as the configuration tells without a pull.
func describeHosts(authz pull.Authorizer, images []config.Image) map[string]string {
	out := map[string]string{}
	d, ok := authz.(interface{ Describe(string) auth.Source })
	for _, img := range images {
		h := img.Host()
		if _, done := out[h]; !done {
			out[h] = ""
			if ok {
				out[h] = string(d.Describe(h))
			}
		}
	}
	return out
}

// reconcile makes images the set the loop keeps warm: pulls of images that
// left it are cancelled; new images, new aliases, and (after a platform
// change or with credentials that may now work) images not warm are due.
func (l *loop) reconcile(cfg config.Config, images []config.Image, platformChanged bool) {
	want := map[string]bool{}
	for _, img := range images {
		want[img.Ref] = true
	}
	for ref, st := range l.states {
		if want[ref] {
			continue
		}
		if st.cancel != nil {
			st.cancel(errors.New("image left the configured set"))
			l.log.Info("pull cancelled: image left the configured set", "image", ref)
		}
		delete(l.states, ref)
		if _, ok := l.fallbackTags[ref]; ok {
			delete(l.fallbackTags, ref) // pulled still knows it, for prune
			l.pulledDirty = true
		}
	}
	for _, img := range images {
		st, ok := l.states[img.Ref]
		if !ok {
			l.states[img.Ref] = &imageState{ImageStatus: ImageStatus{Image: img, State: state.Pending, Alias: cfg.AliasRef(img.Runtime), Due: true}}
			continue
		}
		if alias := cfg.AliasRef(img.Runtime); alias != st.Alias {
			st.Alias, st.Due = alias, true // tag anew
		}
		if st.State != state.Warm || platformChanged {
			st.Due, st.Attempts, st.NextAttempt = true, 0, time.Time{}
		}
	}
	l.images = images
}

// requeue makes every image that is not being pulled due now; with
// all=false only those not warm.
func (l *loop) requeue(all bool) {
	for _, st := range l.states {
		if st.cancel != nil {
			continue
		}
		if all || st.State != state.Warm {
			st.Due, st.Attempts, st.NextAttempt = true, 0, time.Time{}
		}
	}
}

// credentialsChanged tries again at once every image whose last pull
// failed on auth, and says anew where each host's credentials come from.
// The auth package reads config.json at every selection, so nothing it
// holds goes stale.
func (l *loop) credentialsChanged() {
	now := l.clock.Now()
	l.credsAt = now
	if l.authz != nil {
		l.described = describeHosts(l.authz, l.images)
	}
	n := 0
	for _, st := range l.states {
		if st.cancel != nil || st.LastClass != pull.ClassAuth || (st.Due && !st.NextAttempt.After(now)) {
			continue
		}
		st.Due, st.Attempts, st.NextAttempt = true, 0, now
		n++
	}
	l.log.Info("credentials changed", "retrying_auth_failures", n)
}
