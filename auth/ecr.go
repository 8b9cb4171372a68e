package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"strings"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/awslabs/amazon-ecr-credential-helper/ecr-login/api"
	"github.com/awslabs/amazon-ecr-credential-helper/ecr-login/cache"
	ecrconfig "github.com/awslabs/amazon-ecr-credential-helper/ecr-login/config"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// IsECRHost reports whether the ecr-login library accepts host (with or
// without a port): the private ECR forms (<account>.dkr.ecr[-fips].<region>
// .amazonaws.com and the .com.cn, gov and on.aws forms) and public.ecr.aws.
func IsECRHost(host string) bool {
	_, err := api.ExtractRegistry(host)
	return err == nil
}

// RouteECRLogs sends what the ecr-login library logs (through logrus's
// standard logger, where it reports the cause of every failure that its
// Get turns into "credentials not found") into log. The last call wins.
func RouteECRLogs(log *slog.Logger) {
	std := logrus.StandardLogger()
	std.SetOutput(io.Discard)
	std.SetLevel(logrus.InfoLevel)
	hooks := logrus.LevelHooks{}
	hooks.Add(&ecrconfig.URLRedactorHook{})
	hooks.Add(slogHook{log.With("component", "ecr-login")})
	std.ReplaceHooks(hooks)
}

type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		// The library logs the API's error text; the API is outside.
		attrs = append(attrs, k, safetext.Line(fmt.Sprint(v), 512))
	}
	lvl := slog.LevelInfo
	switch {
	case e.Level <= logrus.ErrorLevel:
		lvl = slog.LevelError
	case e.Level == logrus.WarnLevel:
		lvl = slog.LevelWarn
	case e.Level >= logrus.DebugLevel:
		lvl = slog.LevelDebug
	}
	h.log.Log(context.Background(), lvl, safetext.Line(e.Message, 200), attrs...)
	return nil
}

// ecrProvider fetches ECR tokens in-process with the ecr-login library and
// the AWS default credential chain (an instance role through IMDSv2 on
// EC2). The library's file cache lives in cacheDir; it treats a token as
// fresh for half its life, so a 12 h token is renewed after 6 h.
type ecrProvider struct {
	cacheDir string
	log      *slog.Logger
	now      func() time.Time
	// timeout bounds one token fetch (Options.HelperTimeout).
	timeout time.Duration
	// flight makes concurrent pulls from one host share one token fetch.
	flight singleflight.Group
	// http is shared by every fetch, so that its connections are reused
	// rather than left idle by a new client per fetch.
	http *awshttp.BuildableClient
}

// ecrResult is a fetched ECR token.
type ecrResult struct {
	creds   Credentials
	expires time.Time // zero when the cache is off
	chain   string    // which AWS credentials signed the request
}

// ecrHTTPClient is the ECR API client's HTTP client. Tokens are fetched
// every few hours, so it keeps no connection open between fetches: an idle
// connection would hold a file descriptor and two goroutines for nothing.
func ecrHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(t *nethttp.Transport) { t.DisableKeepAlives = true })
}

// get returns a token for host. Every caller that asks while a fetch for
// host runs shares it; each returns when its own ctx is done, and the
// fetch goes on for the others.
func (e *ecrProvider) get(ctx context.Context, host string) (ecrResult, error) {
	ch := e.flight.DoChan(host, func() (any, error) {
		// The fetch belongs to every caller that joins it, not to the
		// one that happened to start it: it must not end with that
		// caller's pull (cancelled when its image leaves the set), only
		// with its own timeout.
		deadline := time.Now().Add(e.timeout)
		fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		res, err := e.fetch(fctx, host)
		// The deadline, not fctx.Err(): an API call ends on its own
		// context with the same deadline, which may fire first.
		if err != nil && !time.Now().Before(deadline) && !errors.Is(err, ErrUnavailable) {
			err = markUnavailable(fmt.Errorf("fetching the ECR token for %s took longer than %s (the credential helper timeout): %w", host, e.timeout, err))
		}
		return res, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return ecrResult{}, r.Err
		}
		return r.Val.(ecrResult), nil
	case <-ctx.Done():
		return ecrResult{}, fmt.Errorf("waiting for the ECR token for %s: %w", host, ctx.Err())
	}
}

// withDeadlineOf gives every AWS API call the deadline of ctx. ecr-login
// calls the ECR API with context.TODO(), so without it a stalled API
// would hold the fetch, and every pull from the host that joins it,
// forever.
func withDeadlineOf(ctx context.Context) func(*middleware.Stack) error {
	return func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("PullAgentFetchDeadline",
			func(c context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				if d, ok := ctx.Deadline(); ok {
					var cancel context.CancelFunc
					c, cancel = context.WithDeadline(c, d)
					defer cancel()
				}
				return next.HandleInitialize(c, in)
			}), middleware.Before)
	}
}

func (e *ecrProvider) fetch(ctx context.Context, host string) (ecrResult, error) {
	reg, err := api.ExtractRegistry(host)
	if err != nil {
		return ecrResult{}, fmt.Errorf("%s is not an ECR registry host: %w", host, err)
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(reg.Region), config.WithHTTPClient(e.http),
		config.WithAPIOptions([]func(*middleware.Stack) error{withDeadlineOf(ctx)})}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return ecrResult{}, fmt.Errorf("loading the AWS configuration for %s: %w", host, err)
	}
	awsCreds, err := awsCfg.Credentials.Retrieve(ctx)
	if err != nil {
		return ecrResult{}, fmt.Errorf("no AWS credentials for ECR %s (instance role, environment or shared config): %w", host, err)
	}
	chain := describeAWSSource(awsCreds.Source)
	client := api.DefaultClientFactory{}.NewClientWithOptions(api.Options{Config: awsCfg, CacheDir: e.cacheDir})
	a, err := client.GetCredentials(host)
	if err != nil {
		err = fmt.Errorf("ecr-login could not get a token for %s: %w", host, err)
		if transientAWS(err) {
			err = markUnavailable(err)
		}
		return ecrResult{}, err
	}
	res := ecrResult{creds: Credentials{Username: a.Username, Password: NewSecret(a.Password)}, chain: chain}
	cc := cache.BuildCredentialsCache(awsCfg, e.cacheDir)
	var entry *cache.AuthEntry
	if reg.Service == api.ServiceECRPublic {
		entry = cc.GetPublic()
	} else {
		entry = cc.Get(reg.ID)
	}
	if entry != nil {
		res.expires = entry.ExpiresAt
		if !entry.ExpiresAt.After(e.now()) {
			// The library fell back to its cached token because the
			// refresh failed; the daemon would be refused with it.
			// Retried with backoff: a denial would have been returned
			// as an error, not papered over with the cached token.
			return ecrResult{}, markUnavailable(fmt.Errorf("the ECR token for %s expired at %s and fetching a new one failed (the ecr-login log line before this one has the cause)", host, entry.ExpiresAt.UTC().Format(time.RFC3339)))
		}
	}
	return res, nil
}

// transientAWS reports whether err from the ECR API should pass on its
// own: throttling, a 5xx answer, or no answer at all. Access denied,
// unknown keys and other 4xx answers need an operator.
func transientAWS(err error) bool {
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
			"ServerException", "InternalFailure", "ServiceUnavailable", "InternalServerError":
			return true
		}
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode() >= 500 || re.HTTPStatusCode() == 429
	}
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe)
}

func describeAWSSource(src string) string {
	switch {
	case strings.Contains(src, "EC2RoleProvider"):
		return "instance role"
	case strings.Contains(src, "EnvConfigCredentials"):
		return "AWS environment keys"
	case strings.Contains(src, "SharedConfigCredentials"), strings.Contains(src, "SharedConfig"):
		return "AWS shared config"
	case strings.Contains(src, "WebIdentity"):
		return "web identity"
	case src == "":
		return "AWS default credential chain"
	default:
		return src
	}
}
